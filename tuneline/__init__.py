"""Tuneline: fine-tune a pretrained model on a small labelled data set, gate it, and serve it over HTTP."""
