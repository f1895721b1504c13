"""Recognition presets, one YAML file each (pointfalip.presets kind "recognizer")."""
