from .hsv_jitter import HSVJitter

__all__ = ['HSVJitter']
