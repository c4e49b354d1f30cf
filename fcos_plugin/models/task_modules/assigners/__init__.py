from .match_cost_simota_assigner import MatchCostSimOTAAssigner

__all__ = ['MatchCostSimOTAAssigner']
