"""The churn example's own model code: not part of Lepton, found through ``code_path``."""
