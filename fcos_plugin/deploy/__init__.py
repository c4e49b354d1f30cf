"""Deployment support (needs mmdeploy): importing ``fcos_plugin.deploy`` registers the mmdeploy
rewriters of fcos_plugin's modules. Kept out of ``fcos_plugin/__init__`` so that training and
testing never import mmdeploy."""
from .rewriters import EXPORT_CFG_KEY, check_exportable_test_cfg

__all__ = ['EXPORT_CFG_KEY', 'check_exportable_test_cfg']
