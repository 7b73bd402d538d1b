"""HTTP serving of the promoted classifier: a BentoML service that reuses components/ for every step of inference."""
