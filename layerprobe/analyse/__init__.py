"""Claims from run folders and records: paired tests, relate, matched drift, prediction."""
