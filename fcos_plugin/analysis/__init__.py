from .complexity import ComplexityReport, detector_complexity

__all__ = ['ComplexityReport', 'detector_complexity']
