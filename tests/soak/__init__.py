"""The short soak (CI version of bench/soak): promises checked under each single fault."""
