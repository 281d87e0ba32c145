"""Science data curation (Intern-S1 report, section 4.1): classifier recall and filtering, page-level PDF
parsing, domain-centric web parsing, MinHash and page-graph dedup. See docs/curation.md.

Modules: ``formulas`` (every score, with its definition), ``taxonomy`` (labels + LLM silver labelling),
``llm`` (pluggable OpenAI-compatible client), ``classifier`` (fastText), ``pdf``, ``web``, ``dedup``,
``cli`` (`megatron-s1 data ...`).
"""
