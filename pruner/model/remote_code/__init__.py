"""Modelling code copied into exported folders (needs only torch and transformers)."""
