"""Tuneline's pipeline stages: each stage's logic lives here once; flows/, serving/ and dvc.yaml adapt it."""
