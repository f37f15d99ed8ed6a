"""Pieces shared by the language model (``lm/``) and the speech recognizer (``las/``)."""
