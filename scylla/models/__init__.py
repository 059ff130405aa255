"""Models: Llama-family drafts and targets built from a size spec, pretrained targets, draft families."""
