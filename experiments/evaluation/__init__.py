"""Evaluation: separation metrics (`metrics`) and the test-split evaluation (`evaluate`)."""
