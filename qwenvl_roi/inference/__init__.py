"""Per-region scores from a fine-tuned model: prompt building, scoring and generate modes."""
