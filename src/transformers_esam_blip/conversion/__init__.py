"""Conversion of original EfficientSAM and BLIP checkpoints to the EsamBlip format."""
