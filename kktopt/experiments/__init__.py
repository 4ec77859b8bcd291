from kktopt.experiments import hypersphere as hypersphere
from kktopt.experiments import pose as pose
