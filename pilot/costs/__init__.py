"""What LLM steps cost and who may spend: prices, usage, budgets (issue 11).

``prices`` reads the price table (shipped ``prices.json``, overridden by the operator's
``PRICE_TABLE``) and turns (provider, model, usage) into USD; ``budget`` holds the rules
that decide before a call whether it may start, and whether a schedule may fire;
``meter`` is the engine's hook that applies them to one step.
"""
