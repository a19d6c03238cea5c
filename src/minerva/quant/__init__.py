"""Weight formats and the methods that run linear layers over them: base.py (the LinearMethod
protocol and QuantConfig), dense.py (today's weights), registry.py (name -> method)."""
