"""`qwenvl-roi preview`: the converted dataset drawn as the model will see it, problems first.

``samples`` reads the converters' outputs back (regions, report, meta; the txt of an image whose boxes were
dropped or clipped, with the converters' own parser), ``page`` draws the thumbnails and writes the pages,
``cli`` is the command.
"""
