"""Inference: colour photos with a checkpoint or an export, and write exports. Imports
nothing from training or backends."""
