"""Data: corpora with document-level splits, the tokenizer shared by target and drafts, prompt tasks."""
