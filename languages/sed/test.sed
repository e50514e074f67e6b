s/$/ ok/
