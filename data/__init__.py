"""Packaged data (class names, templates), read through pointfalip.presets; shipped as pointfalip.data."""
