"""app.py in a real headless browser (Debian's chromium and chromium-driver, driven by selenium): set a class and a
schedule, click Generate, and the image area holds the generated grid; paint a mask on a val image, click Edit,
and the edits appear. Without the browser it skips with one line; under CI (CI=true) a missing browser fails.

The README's screenshot comes from this test, serving the demo's model:
    CHECKERBOARD_APP_CHECKPOINT=outputs/demo/checkpoint-last.pth CHECKERBOARD_WRITE_APP_PNG=1 \
        python -m pytest -q tests/test_app_browser.py
"""
import io
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from test_app import launched, trained  # noqa: F401 (fixture)

CHROMIUM, DRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def served(trained):  # noqa: F811
    """The app serving CHECKERBOARD_APP_CHECKPOINT, or the tiny trained model: (session, port)."""
    session, page, port = launched(os.environ.get('CHECKERBOARD_APP_CHECKPOINT',
                                                  str(trained / 'run' / 'checkpoint-last.pth')))
    yield session, port
    page.close()


@pytest.fixture(scope='module')
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        message = f'headless browser not found ({CHROMIUM}, {DRIVER}): apt-get install chromium chromium-driver'
        if os.environ.get('CI') == 'true':
            pytest.fail(message)
        pytest.skip(message)
    webdriver = pytest.importorskip('selenium.webdriver')
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic',
                 '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--window-size=1400,1100'):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, seconds=120):
    start = time.time()
    while time.time() - start < seconds:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise TimeoutError(f'gave up after {seconds} s')


def shown_image(driver, elem_id):
    """The <img> inside the element, once it has a source, is decoded and is laid out (a screenshot of an image
    still at 0 width fails)."""
    def find():
        images = driver.find_elements('css selector', f'#{elem_id} img')
        shown = images and images[0].get_attribute('src') and driver.execute_script(
            'const image = arguments[0]; return image.complete && image.naturalWidth > 0 '
            '&& image.getBoundingClientRect().width > 0', images[0])
        return images[0] if shown else None
    return wait_for(find)


def screenshot_array(element):
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert('RGB')).astype(float)


def fill(driver, elem_id, text):
    """Type text into the input field of the block with elem_id."""
    from selenium.webdriver.common.keys import Keys
    field = driver.find_element('css selector', f'#{elem_id} input, #{elem_id} textarea')
    field.click()
    field.send_keys(Keys.CONTROL, 'a')
    field.send_keys(text, Keys.ENTER)
    return field


def test_generate_and_edit_in_a_real_browser(browser, served):
    session, port = served
    browser.get(f'http://127.0.0.1:{port}/')
    wait_for(lambda: browser.find_elements('id', 'generate'))
    fill(browser, 'generate-class', session.classes[2])
    fill(browser, 'generate-schedule', '1')
    browser.find_element('id', 'generate').click()
    grid = shown_image(browser, 'grid')
    steps = len(session.model.sides)  # one step per scale
    wait_for(lambda: f'{steps} serial steps' in browser.find_element('id', 'generate-info').text)
    shot = screenshot_array(grid)
    assert shot.std() > 10, 'the image area is blank'  # a grid of samples, not an empty panel
    if os.environ.get('CHECKERBOARD_WRITE_APP_PNG') == '1':
        browser.execute_script('window.scrollTo(0, 0)')
        browser.save_screenshot(os.path.join(ROOT, 'docs', 'app.png'))

    browser.find_element('xpath', "//button[@role='tab' and contains(., 'Edit')]").click()
    browser.find_element('xpath', "//button[contains(., 'Load val image')]").click()
    canvas = wait_for(lambda: [c for c in browser.find_elements('css selector', '#editor canvas')
                               if c.size['width'] > 50])[0]
    time.sleep(1)
    from selenium.webdriver.common.action_chains import ActionChains
    width, height = canvas.size['width'], canvas.size['height']
    strokes = ActionChains(browser).move_to_element_with_offset(canvas, width // 8, 0).click_and_hold()
    for dy in range(-height // 4, height // 4, max(1, height // 16)):  # paint the right half, line by line
        strokes = strokes.move_to_element_with_offset(canvas, width * 3 // 8, dy).move_to_element_with_offset(
            canvas, width // 8, dy + max(1, height // 32))
    strokes.release().perform()
    browser.find_element('id', 'edit').click()
    edits = shown_image(browser, 'edits')
    assert screenshot_array(edits).std() > 10, 'the edits area is blank'
