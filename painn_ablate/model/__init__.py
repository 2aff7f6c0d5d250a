"""PaiNN with every stabilizer a toggle (`painn`)."""
