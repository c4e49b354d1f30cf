from .tuned_fcos_head import MatchCostSimOTAAssigner, TunedFCOSHead

__all__ = ['MatchCostSimOTAAssigner', 'TunedFCOSHead']
