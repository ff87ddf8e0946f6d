"""Who may call: API keys and their tiers, the credential check, budgets and rate limits,
gradient protection, and the audit of what each key pulled."""
