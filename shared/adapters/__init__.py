"""One module per port and technology; vendor SDKs are imported only here."""
