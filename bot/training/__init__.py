"""Training data out of the bot's conversations: InternVL fine-tuning (SFT) and preference (MPO) exports."""
