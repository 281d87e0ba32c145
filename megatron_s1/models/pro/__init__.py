"""Intern-S1-Pro model features: grouped router + STE (router.py, routing.py), FoPE (fope.py), expert
expansion (expand.py). See docs/intern_s1_pro.md."""
