"""Text-image retrieval: image-caption pairs, CLIP's contrastive loss, OpenCLIP's recall metrics."""
