"""Packaged presets (YAML), read through pointfalip.presets; shipped in the wheel as pointfalip.configs."""
