"""Self-supervised pretraining of encoders: DINO + iBOT + VICReg + KoLeo."""
