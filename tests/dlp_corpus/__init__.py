"""The DLP corpus: planted values (fake but well-formed) for recall, clean real-world text for false positives.

python -m tests.dlp_corpus.measure      # the per-detector table the README reports
"""
