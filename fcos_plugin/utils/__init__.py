"""Small helpers shared by the package, the tools and the benchmarks (each written once); no registry."""
from .cfg_options import literal_dicts
from .fileio import DiskFullError, refuse_existing, write_atomic, write_json_atomic
from .keys import abbreviate_keys, state_dict_diff
from .setup_env import adapt_cfg_to_machine
from .upstream_warnings import quiet_upstream_warnings

__all__ = ['DiskFullError', 'abbreviate_keys', 'adapt_cfg_to_machine', 'literal_dicts',
           'quiet_upstream_warnings', 'refuse_existing', 'state_dict_diff', 'write_atomic',
           'write_json_atomic']
