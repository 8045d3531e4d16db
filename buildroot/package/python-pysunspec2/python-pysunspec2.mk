################################################################################
#
# python-pysunspec2
#
################################################################################

PYTHON_PYSUNSPEC2_VERSION = 1.3.7
PYTHON_PYSUNSPEC2_SOURCE = pysunspec2-$(PYTHON_PYSUNSPEC2_VERSION).tar.gz
PYTHON_PYSUNSPEC2_SITE = https://files.pythonhosted.org/packages/0d/14/4634d7811c82ec7b11c44241fbcc89dda2016c4f5871b1a42acb21d6441e
PYTHON_PYSUNSPEC2_SETUP_TYPE = setuptools
PYTHON_PYSUNSPEC2_LICENSE = Apache-2.0
PYTHON_PYSUNSPEC2_LICENSE_FILES = LICENSE

$(eval $(python-package))
