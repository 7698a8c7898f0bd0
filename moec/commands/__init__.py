"""Click commands, one module per command family. Thin: parse, call the library, render."""
