"""The offline demo: digits images and clips (`graytune data`), and `graytune demo`."""
