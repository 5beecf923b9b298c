"""qwenvl-roi: fine-tune Qwen2.5-VL / Qwen2-VL to judge defect images from candidate regions.

Kept import-free on purpose: the plugin's start-up hook imports this package in every Python process.
"""

__version__ = "0.1.0"
