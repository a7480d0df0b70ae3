"""District side: the SIS tables, the reference data generator, and the ordered, confirmed publisher."""
