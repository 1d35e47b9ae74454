"""Knowledge bases: the company's manuals, help-center articles and solved tickets, searched for each turn
whose persona (or adapter) names a base, shown to InternVL (text, and a PDF page's image) and cited to the
user in a Sources footer."""
