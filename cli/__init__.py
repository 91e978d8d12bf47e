"""The `weightbank` / `wb` command line (click)."""
