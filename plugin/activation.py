"""Start-up hook imported by qwenvl_roi_plugin.pth in every Python process (filled in by the plugin work)."""
