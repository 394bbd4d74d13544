"""Evaluation of a generator's samples during training and in sweeps (the ADM suite is evaluator.py)."""
