"""qwenvl-roi: fine-tune Qwen2.5-VL, Qwen2-VL, Qwen3-VL or Qwen3.5 to judge industrial-defect images.

The model sees the whole image plus candidate regions written as text and answers for the image and for
each region.

Kept import-free on purpose: the plugin's start-up hook imports this package in every Python process.
"""

__version__ = "0.1.0"
