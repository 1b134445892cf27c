"""Dataset tools: the rejection pass and bucket preview (`lorafile prep`) and captioning."""
