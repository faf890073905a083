"""Evaluation after every task: FID (Inception and classifier features), KLD/ARD, solver ACC."""
