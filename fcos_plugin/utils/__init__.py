"""Small helpers shared by the package, the tools and the benchmarks (each written once)."""
from .fileio import refuse_existing, write_atomic, write_json_atomic
from .keys import abbreviate_keys, state_dict_diff

__all__ = ['abbreviate_keys', 'refuse_existing', 'state_dict_diff', 'write_atomic', 'write_json_atomic']
