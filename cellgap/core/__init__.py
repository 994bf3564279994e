"""The torch-free bottom layer every package uses: errors, version, CLI argument types, progress, IO."""
