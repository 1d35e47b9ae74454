"""What users send: images (tiling, the pixel budget), video, documents, attachments and the token budget."""
