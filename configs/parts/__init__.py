"""Part-segmentation presets, one YAML file each (pointfalip.presets kind "parts", pointfalip.parts.PartPreset)."""
