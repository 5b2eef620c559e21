"""Workstation tools, never needed on a device: a local broker launcher and the demo."""
