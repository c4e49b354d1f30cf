from .complexity import ComplexityReport, detector_complexity
from .reports import (
                      ERROR_KINDS,
                      detection_errors,
                      detection_sheet,
                      plot_training_curves,
                      read_scalars,
                      training_log,
)

__all__ = ['ComplexityReport', 'ERROR_KINDS', 'detection_errors', 'detection_sheet', 'detector_complexity',
           'plot_training_curves', 'read_scalars', 'training_log']
